"""Keyring, AES-SIV pseudonyms, keyed digests and the export adapter."""
