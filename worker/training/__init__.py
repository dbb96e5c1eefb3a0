"""Django-free trainers: feature engineering, algorithms, evaluation and model bundles."""
