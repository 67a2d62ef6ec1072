"""Small helpers every package needs (atomic files, hashing, CPU counting): one home, no project imports."""
