-- The app's own tables (as the Pick-a-Pic app's FastAPI + PostgreSQL backend kept them), as `pickapic simulate --to-postgres` creates them.
-- Inputs: none. Output: tables users, images, rankings, downloads and an index on each created_at
-- (the export reads one day at a time by created_at). Parameters: none. Several statements: the
-- schema is one unit, applied in one transaction.
CREATE TABLE users (
    user_id integer PRIMARY KEY,
    created_at timestamp NOT NULL,
    email text UNIQUE,
    name text
);
CREATE TABLE images (
    image_id serial PRIMARY KEY,
    created_at timestamp NOT NULL,
    image_uid text UNIQUE NOT NULL,
    user_id integer,
    prompt text,
    negative_prompt text,
    seed integer,
    gs double precision,
    steps integer,
    idx integer,
    num_generated integer,
    scheduler_cls text,
    model_id text
);
CREATE TABLE rankings (
    ranking_id serial PRIMARY KEY,
    created_at timestamp NOT NULL,
    user_id integer,
    image_0_uid text,
    image_1_uid text,
    image_2_uid text,
    image_3_uid text,
    best_image_uid text,
    prompt text
);
CREATE TABLE downloads (
    download_id serial PRIMARY KEY,
    created_at timestamp NOT NULL,
    user_id integer,
    image_uid text,
    prompt text
);
CREATE INDEX users_created_at ON users (created_at);
CREATE INDEX images_created_at ON images (created_at);
CREATE INDEX rankings_created_at ON rankings (created_at);
CREATE INDEX downloads_created_at ON downloads (created_at);
