"""Rollouts: a candidate version meets live traffic gradually and is judged by a sequential test."""
