-- Sequin keeps its own state in a database of its own on the same server (PG_DATABASE=sequin
-- in docker-compose.yml). The application database `app` is created by POSTGRES_DB.
create database sequin;
