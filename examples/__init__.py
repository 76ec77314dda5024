"""Your own models under hpo: training functions behind the seam (hpo.seam), each with its study
in studies/ (digits.py: studies/digits.yaml)."""
