"""Search spaces; each one is a package (`from dnas.spaces import darts`)."""
