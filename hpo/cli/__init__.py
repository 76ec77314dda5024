"""The doors: each command reads its flags into a request dataclass and makes one call into the
core (hpo.session, hpo.analysis, hpo.validation, hpo.raytune). Errors become one line and an
exit code in one place, hpo.cli.command."""
