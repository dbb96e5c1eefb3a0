"""The dataset engine: file checks, schema inference, profiles, validation and splits.

Plain data in and out (paths, dicts, numpy arrays); no Django, so it runs and is tested alone.
"""
