"""Small helpers with one job each: atomic writes and output checks (`io`), argument checks (`validation`), and
"local path or Hub repo?" resolution (`hub`)."""
