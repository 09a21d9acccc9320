"""Measuring the simulator itself: ``kaiser-edu bench``."""
