"""Other projects' formats: CPC_audio checkpoints, the s3prl upstream, ZeroSpeech layouts, Hugging Face and fairseq models."""
