"""What a run leaves for people: plots, the HTML report, the model card and the Hub upload."""
