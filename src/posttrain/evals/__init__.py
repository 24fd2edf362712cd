"""Factuality evaluation: grading (SimpleQA-style), metrics and calibration, the evaluation run itself."""
