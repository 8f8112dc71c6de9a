"""The console: web pages for store staff, operations, finance and auditors (README "Console").

It holds no business rules: every page calls the other services' HTTP APIs with the signed-in
person's own short-lived key, so a page can never show or do what the API would refuse that person.
"""
