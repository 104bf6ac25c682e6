"""One thin script per step: parse (TrlParser) -> build -> train -> save/push."""
