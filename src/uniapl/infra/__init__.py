"""Infrastructure every part of uniapl may use and none of it is about: user errors, typed config schemas,
atomic writes, fault injection for tests, hub checks, phase timing."""
