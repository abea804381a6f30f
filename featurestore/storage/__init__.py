"""The on-disk format: segment files and manifests (the one ``Writer``), stable keys and hashes, the atomic
file helper, and the lookup tables derived from segments."""
