"""Text normalisation and content hashes (no Spark)."""

from longtail.core.text import content_hash, encoder_text, normalise_text


def test_normalise_text():
    assert normalise_text("  <p>Caf&eacute;\n  noir</p> ") == "Café noir"
    assert normalise_text(None) == ""
    assert normalise_text(3.5) == ""  # type: ignore[arg-type]
    assert normalise_text("\u200bzero\u0007width\ufeff") == "zerowidth"
    assert normalise_text("ﬁne　wide") == "fine wide"  # NFKC folds the ligature and the ideographic space
    assert normalise_text("<br/><b></b>") == ""


def test_encoder_text():
    assert encoder_text("Heat", "A heist in L.A.") == "Heat. A heist in L.A."
    assert encoder_text("Heat.", "A heist.") == "Heat. A heist."
    assert encoder_text("Heat", "Heat is a 1995 film.") == "Heat is a 1995 film."
    assert encoder_text(None, " Only text ") == "Only text"
    assert encoder_text("Title", "") == "Title"


def test_content_hash_is_sha256_of_the_encoder_text():
    # sha256("abc"), the FIPS 180-2 test vector
    assert content_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(encoder_text("T", "<i>d</i>")) == content_hash("T. d")
