"""The test suite, one folder per layer (README.md). A package, so that test files in different folders may share
a name and import what they share from `tests.helpers`."""

import pytest

# helpers.py holds asserts (assert_one_line_error, ...): rewritten like a test's, a failing one shows its values
pytest.register_assert_rewrite("tests.helpers")
