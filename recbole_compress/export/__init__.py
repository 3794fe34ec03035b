"""On-device export of compressed models (EODRec: codes + codebooks + backbone, TorchScript-able loader)."""
