"""Offline meta-training (``lossrag train``): generated problems, recipes, evolution strategies,
Reptile over the online loop."""

from lossrag.train.es import PARAMS, initial_parameters, policy_from, policy_values, train
from lossrag.train.generate import Distribution, GeneratedProblem, TaskSpec, sample_problem
from lossrag.train.recipe import ES, Online, Recipe, load_recipe, shipped_recipes

__all__ = [
    "ES",
    "PARAMS",
    "Distribution",
    "GeneratedProblem",
    "Online",
    "Recipe",
    "TaskSpec",
    "initial_parameters",
    "load_recipe",
    "policy_from",
    "policy_values",
    "sample_problem",
    "shipped_recipes",
    "train",
]
