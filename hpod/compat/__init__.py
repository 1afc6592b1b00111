"""Other tools' APIs over hpod: ``from hpod.compat import hpopt`` (OTX's hpopt, docs/otx.md)."""
