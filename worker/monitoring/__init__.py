"""Monitoring engines without Django: data and prediction drift, realised performance, and CBPE.

The console's monitoring app calls these with plain numpy arrays and stores what they return.
"""
