"""One adapter per station-system dialect: native (our own inventory), rest, xml."""
