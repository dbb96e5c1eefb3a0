"""The A/B test statistics engine: pure functions over per-arm sufficient statistics, no Django.

`readout.readout` is the entry point the console calls; the other modules are its parts (SRM check,
fixed-horizon tests, mSPRT confidence sequences, the power calculation, the Bayesian readout). Formulas,
assumptions and refusals are written down in docs/abtests.md.
"""
