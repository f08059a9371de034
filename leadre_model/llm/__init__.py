"""The LEADRE language model: tokenizer (tokenizer.py), model build/save/load (model.py) and
trie-constrained beam search (decode.py)."""
