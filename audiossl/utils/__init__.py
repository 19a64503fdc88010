"""Small helpers with no audio in them: atomic writes, folder locks, the memory allocator."""
