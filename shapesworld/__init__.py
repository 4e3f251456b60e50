"""A captioned world of coloured shapes (``world``) and an exact judge that reads it back (``judge``).

Pure numpy (the judge also uses scipy's connected components); no torch, no ComfyUI import."""
