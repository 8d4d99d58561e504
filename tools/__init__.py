"""Tools run from the Makefile (bench, the demo-tokenizer build): not part of the library, not shipped."""
