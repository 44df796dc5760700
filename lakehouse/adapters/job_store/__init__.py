"""The job store: JobService's jobs in a SQL database (SQLite or PostgreSQL), one module per job.

Its values (job states, ``JobRecord``, ``Claim``, ``LeaseLost``) are the domain's
(``lakehouse.domain.jobs``).

* ``store``: ``JobStore``, the store itself (create, claim, heartbeat, finish, list...).
* ``schema``: the job tables as this release reads and writes them.
* ``migrations``: the schema versions and the step from each to the next.
* ``engines``: SQLAlchemy engine setup for SQLite and PostgreSQL.
"""
