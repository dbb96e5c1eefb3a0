from __future__ import annotations

from django.db import models


class ReferenceSource(models.TextChoices):
    TRAINING = "training", "Training dataset"
    TRAFFIC = "traffic", "Logged traffic"
