"""The numbering every part of the data pipeline shares: the splits and the reserved ids."""

SPLITS: tuple[str, ...] = ("train", "valid", "test")
TRAIN, VALID, TEST = 0, 1, 2  # a sample's split, as stored and gathered
FIRST_ITEM_ID = 2  # ids 0 and 1 of every vocabulary are padding and unknown
