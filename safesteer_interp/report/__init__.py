"""The run report: one HTML/Markdown page with the results table, plots and the analyses, built only from the
artifacts the stages left in the run folder.
"""
