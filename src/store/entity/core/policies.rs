//! `policies` table.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "policies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Option<Uuid>,
    pub name: String,
    pub policy_type: String,
    pub ca_id: Uuid,
    pub key_algorithms: Json,
    pub allowed_dns_suffixes: Json,
    pub allow_ip_sans: bool,
    pub max_validity_days: i32,
    pub extended_key_usages: Json,
    pub required_approvals: i32,
    pub approver_roles: Json,
    pub allow_server_keygen: bool,
    pub allow_key_archival: bool,
    pub allow_key_reuse: bool,
    pub status: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
