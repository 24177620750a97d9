"""The per-frame chain: detector -> tracker -> aligner -> per-face stages -> classifier."""
