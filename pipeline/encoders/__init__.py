"""How text becomes ids: the HF fast tokenizer's batch call (the reference), tiktoken for byte-level BPE, token
widths that stand in for offsets, and the character spans every encoder returns. `choose.make_encoder` picks one."""
