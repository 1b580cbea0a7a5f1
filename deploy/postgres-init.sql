-- Run once by the postgres image on an empty volume (/docker-entrypoint-initdb.d).
--
-- One database per service, each owned by its own login role. PUBLIC loses the
-- CONNECT privilege, so a service's role can connect to its own database only.
-- The passwords come from the postgres container's environment (see
-- docker-compose.yml and deploy/.env.example); nothing secret is stored here.
-- psql's \getenv needs psql 15 or newer (the image ships 16). docker-compose
-- refuses to start while any of these variables is unset; should one be empty
-- anyway, the :'...' reference stays literal and the script stops with an error.

\set ON_ERROR_STOP on

\getenv registry_password TPA_REGISTRY_DB_PASSWORD
\getenv workflow_password TPA_WORKFLOW_DB_PASSWORD
\getenv funds_password TPA_FUNDS_DB_PASSWORD
\getenv monitoring_password TPA_MONITORING_DB_PASSWORD
\getenv gateway_password TPA_GATEWAY_DB_PASSWORD

CREATE ROLE tpa_registry LOGIN PASSWORD :'registry_password';
CREATE DATABASE tpa_registry OWNER tpa_registry;
REVOKE ALL ON DATABASE tpa_registry FROM PUBLIC;

CREATE ROLE tpa_workflow LOGIN PASSWORD :'workflow_password';
CREATE DATABASE tpa_workflow OWNER tpa_workflow;
REVOKE ALL ON DATABASE tpa_workflow FROM PUBLIC;

CREATE ROLE tpa_funds LOGIN PASSWORD :'funds_password';
CREATE DATABASE tpa_funds OWNER tpa_funds;
REVOKE ALL ON DATABASE tpa_funds FROM PUBLIC;

CREATE ROLE tpa_monitoring LOGIN PASSWORD :'monitoring_password';
CREATE DATABASE tpa_monitoring OWNER tpa_monitoring;
REVOKE ALL ON DATABASE tpa_monitoring FROM PUBLIC;

CREATE ROLE tpa_gateway LOGIN PASSWORD :'gateway_password';
CREATE DATABASE tpa_gateway OWNER tpa_gateway;
REVOKE ALL ON DATABASE tpa_gateway FROM PUBLIC;
