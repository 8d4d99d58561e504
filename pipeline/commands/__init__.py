"""What a person runs on an input or an output: validate, check, report, show."""
