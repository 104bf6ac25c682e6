"""Running a trained model: the terminal chat and the evaluation of each step's model."""
