def test_placeholder(built_home):
    assert built_home.root.exists()
