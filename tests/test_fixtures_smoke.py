def test_tiny_teacher(tiny_teacher):
    assert tiny_teacher.exists()
