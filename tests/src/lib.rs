//! weft-lab (being written)
