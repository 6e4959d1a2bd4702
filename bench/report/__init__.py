"""`rtbench report`: a run directory turned into CSV tables, PNG plots and report.html.

render (the command and the page), tables (every number, as pandas tables), plots,
headline (how far each target goes), stacks (framework or transport: the server
stacks compared), textbook (the seed's claims checked), templates/ (the Jinja page).
"""
