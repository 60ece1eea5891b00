"""Renamed: the head sweep is `iis.sweep` and the configs are `iis.config` (IIS trains no classifier recipe).
This module keeps the old import paths (`from iis.train import IISConfig, score_representation`) working."""

from iis.config import IISConfig, SweepConfig
from iis.sweep import HeadFit, IISResult, correctness, fit_head, score_representation

__all__ = ["HeadFit", "IISConfig", "IISResult", "SweepConfig", "correctness", "fit_head", "score_representation"]
