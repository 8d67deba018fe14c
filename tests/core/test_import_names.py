"""pymilter's C extension is called `milter`; our milter/ folder must never shadow it."""

import importlib


def test_pymilter_extension_is_the_milter_module():
    mod = importlib.import_module("milter")
    assert mod.__file__.endswith((".so", ".pyd")), mod.__file__
    import Milter  # noqa: F401  # imports `milter` itself


def test_our_packages_have_their_own_names():
    assert importlib.import_module("sendguard_milter").__name__ == "sendguard_milter"
    assert importlib.import_module("sendguard_policyd").__name__ == "sendguard_policyd"


def test_the_link_pipeline_is_a_subpackage_of_the_milter():
    links = importlib.import_module("sendguard_milter.links")
    assert links.__file__.endswith("milter/links/__init__.py"), links.__file__
    assert importlib.import_module("sendguard_milter.links.rewrite").__name__ == "sendguard_milter.links.rewrite"
