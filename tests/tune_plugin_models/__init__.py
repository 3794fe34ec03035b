"""A model package the tests register as a plugin package (see tests/test_tune.py): a model RecBole cannot find."""
