"""Export and interchange formats of curated labels: FEID, FEAB, Label Studio.

Plain Python without Django: every function here takes ``CuratedRecord`` values
(or parsed JSON) and returns JSON-ready values or text, so the formats can be
tested and reused on their own.
"""
