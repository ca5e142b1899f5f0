CREATE TABLE roles (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE users (
    id INTEGER PRIMARY KEY, login TEXT NOT NULL UNIQUE, employee_id TEXT,
    full_name TEXT, mail TEXT, active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE user_roles (
    user_id INTEGER NOT NULL REFERENCES users (id), role_id INTEGER NOT NULL REFERENCES roles (id),
    PRIMARY KEY (user_id, role_id)
);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id), started_at TEXT
);
INSERT INTO roles (name) VALUES ('payroll-read'), ('payroll-approve'), ('vendor-create');
