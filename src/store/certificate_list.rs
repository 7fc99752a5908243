//! The certificate list and search over clm_secure's `certificates`, built
//! to stay fast with millions of rows:
//! - a page is chosen by ids alone, so the ordered index range is walked
//!   (and OFFSET skipped) without reading a row; only the page's own rows
//!   are then read, and only the columns a listing shows;
//! - `total` counts at most [`COUNT_HORIZON`] matches past the page's start
//!   ([`SEARCH_COUNT_HORIZON`] for a search): counting a million matches
//!   exactly would cost more than the page;
//! - `q=` matches a subject by substring, through the trigram index of
//!   migration m20261206_000002_certificate_search (FTS5 on SQLite, pg_trgm
//!   on PostgreSQL), case-insensitively on both backends, or a serial by
//!   its beginning, through a plain index on `serial_hex`;
//! - a search with many matches is found by walking the list in its order
//!   instead, testing the subject the list indexes carry (on SQLite as
//!   stored, migration m20261206_000004_search_scan, `Via` says when; on
//!   PostgreSQL lowered, m20261206_000005_folded_subject, the planner
//!   says when).

use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, LikeExpr, Order, Query, SelectStatement, SimpleExpr,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult, IdenStatic,
    QueryFilter, QueryOrder, QuerySelect,
};

use super::entity::secure::certificates;
use super::{
    CertificateFilter, CertificateOrder, Page, SecureDb, StoreResult, parse_one, strings_from_json,
};
use crate::domain::model::CertificateBrief;
use crate::domain::{CaId, CertificateId, OrganizationId, ProfileId};

/// How far past the start of the requested page matches are counted.
pub const COUNT_HORIZON: u64 = 10_000;
/// The same for a `q=` search. Counting a common substring's matches costs
/// more than listing them, and "1,000 or more" answers a search as well.
pub const SEARCH_COUNT_HORIZON: u64 = 1_000;
/// On SQLite a search whose matches are more than this walks the list
/// (`Via::Like`) rather than sorting them (`Via::Fts`): about where the two
/// cost the same with a million certificates (docs/performance.md).
const FTS_SORTS_AT_MOST: u64 = 1_000;

/// How many certificates matched: exact, or at least `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Total {
    pub count: u64,
    pub exact: bool,
}

/// The trigram index cannot answer a shorter substring; those fall back to
/// a scan.
const TRIGRAM: usize = 3;

/// SQLite's subject index, an FTS5 table.
const SEARCH_TABLE: &str = "certificate_search";

#[derive(FromQueryResult)]
struct Row {
    id: uuid::Uuid,
    serial_hex: String,
    subject: String,
    sans: serde_json::Value,
    not_before: chrono::DateTime<chrono::Utc>,
    not_after: chrono::DateTime<chrono::Utc>,
    status: String,
    ca_id: uuid::Uuid,
    profile_id: Option<uuid::Uuid>,
}

/// What `q=` looks for.
struct Search<'a> {
    /// A substring of the subject, any case.
    subject: &'a str,
    /// The beginning of a serial: `q` in lower case without colons, when
    /// that leaves only hex digits.
    serial: Option<String>,
}

impl<'a> Search<'a> {
    fn new(text: &'a str) -> Self {
        let hex: String = text
            .chars()
            .filter(|&c| c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let serial = (!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex);
        Search {
            subject: text,
            serial,
        }
    }

    /// Where SQLite's `LIKE`, which ignores ASCII case only, finds what the
    /// trigram index, which ignores any case, finds.
    fn ascii(&self) -> bool {
        self.subject.is_ascii()
    }

    /// Long enough for the trigram index.
    fn indexed(&self) -> bool {
        self.subject.chars().count() >= TRIGRAM
    }
}

impl SecureDb {
    /// A page of end-entity certificates in `filter.order`, with its total.
    pub async fn list_certificates(
        &self,
        scope: Option<OrganizationId>,
        filter: &CertificateFilter,
        page: Page,
    ) -> StoreResult<(Vec<CertificateBrief>, Total)> {
        let backend = self.read.get_database_backend();
        let search = filter.text.as_deref().map(Search::new);
        let horizon = match search {
            Some(_) => SEARCH_COUNT_HORIZON,
            None => COUNT_HORIZON,
        };
        let limit = page.offset().saturating_add(horizon);
        let via = Via::first(backend, search.as_ref());
        let ids = |via| {
            let mut q = matching(via, scope, filter, search.as_ref());
            order(&mut q, filter.order);
            q.column((certificates::Entity, certificates::Column::Id))
                .offset(page.offset())
                .limit(page.per_page);
            q
        };
        let count =
            |via| self.count_up_to(to_count(via, scope, filter, search.as_ref()), limit + 1);
        let (rows, counted) = if via == Via::Fts {
            // The count comes first: it says whether sorting the matches
            // or walking the list finds the page sooner.
            let counted = count(via).await?;
            let via = search.as_ref().map_or(via, |s| Via::for_page(counted, s));
            (self.page(ids(via), filter.order).await?, counted)
        } else {
            tokio::try_join!(self.page(ids(via), filter.order), count(via))?
        };
        let total = Total {
            count: Ord::min(counted, limit),
            exact: counted <= limit,
        };
        let items = rows.into_iter().map(brief).collect::<StoreResult<_>>()?;
        Ok((items, total))
    }

    /// The listing's columns of the certificates `ids` selects.
    async fn page(&self, ids: SelectStatement, order: CertificateOrder) -> StoreResult<Vec<Row>> {
        let mut rows = certificates::Entity::find().select_only();
        for (expr, o) in order_columns(order) {
            rows = rows.order_by(expr, o);
        }
        Ok(rows
            .columns([
                certificates::Column::Id,
                certificates::Column::SerialHex,
                certificates::Column::Subject,
                certificates::Column::Sans,
                certificates::Column::NotBefore,
                certificates::Column::NotAfter,
                certificates::Column::Status,
                certificates::Column::CaId,
                certificates::Column::ProfileId,
            ])
            .filter(certificates::Column::Id.in_subquery(ids))
            .into_model::<Row>()
            .all(&self.read)
            .await?)
    }

    /// `SELECT COUNT(*) FROM (… LIMIT n)`: stops after `n` matches.
    async fn count_up_to(&self, mut matching: SelectStatement, n: u64) -> StoreResult<u64> {
        matching.expr(Expr::val(1)).limit(n);
        let count = Query::select()
            .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
            .from_subquery(matching, Alias::new("m"))
            .to_owned();
        let row = self.read.query_one(&count).await?;
        let n: i64 = match row {
            Some(r) => r.try_get("", "n")?,
            None => 0,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// How a search's subject is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// No search, or PostgreSQL's `LIKE` on the lowered subject, which the
    /// planner serves from the pg_trgm index or by walking a list index,
    /// as it estimates.
    Plain,
    /// SQLite: the matches of the FTS5 trigram index, looked up and sorted.
    /// Its cost grows with the number of matches.
    Fts,
    /// SQLite: `LIKE` on the subject in the list indexes, walked in the
    /// list's order until the page is full. Its cost grows with how rare
    /// the matches are; a substring shorter than a trigram is always
    /// matched this way, one with other than ASCII characters never
    /// (unless it is that short).
    Like,
}

impl Via {
    /// The plan to count with.
    fn first(backend: DatabaseBackend, search: Option<&Search>) -> Self {
        match search {
            Some(s) if backend == DatabaseBackend::Sqlite && s.indexed() => Via::Fts,
            Some(_) if backend == DatabaseBackend::Sqlite => Via::Like,
            _ => Via::Plain,
        }
    }

    /// On SQLite, once the trigram index has counted `counted` matches.
    fn for_page(counted: u64, search: &Search) -> Self {
        if counted > FTS_SORTS_AT_MOST && search.ascii() {
            Via::Like
        } else {
            Via::Fts
        }
    }
}

/// The list's order; the id breaks ties, so pages never overlap.
fn order_columns(order: CertificateOrder) -> [(SimpleExpr, Order); 2] {
    let col = |c: certificates::Column| Expr::col((certificates::Entity, c));
    match order {
        CertificateOrder::Newest => [
            (col(certificates::Column::CreatedAt), Order::Desc),
            (col(certificates::Column::Id), Order::Desc),
        ],
        CertificateOrder::SoonestExpiry => [
            (col(certificates::Column::NotAfter), Order::Asc),
            (col(certificates::Column::Id), Order::Asc),
        ],
    }
}

fn order(q: &mut SelectStatement, order: CertificateOrder) {
    for (expr, o) in order_columns(order) {
        q.order_by_expr(expr, o);
    }
}

/// The end-entity certificates `scope` may see that pass `filter`, as a
/// `SELECT` without columns.
fn matching(
    via: Via,
    scope: Option<OrganizationId>,
    filter: &CertificateFilter,
    search: Option<&Search>,
) -> SelectStatement {
    // With the FTS5 index the other filters are written `+column`, which
    // SQLite may not use an index for: otherwise, without statistics, it
    // walks a whole index range (a million `is_ca = false` entries)
    // probing the search's few ids, where looking those ids up is the
    // plan wanted whatever the data. clm keeps no SQLite statistics:
    // connections load them once, so statistics gathered on a young
    // database would mislead every long-lived connection later.
    let col = |c: certificates::Column| {
        if via == Via::Fts {
            Expr::cust(format!("+\"certificates\".\"{}\"", c.as_str()))
        } else {
            Expr::col((certificates::Entity, c))
        }
    };
    let mut q = Query::select();
    q.from(certificates::Entity)
        .and_where(col(certificates::Column::IsCa).eq(false));
    if let Some(org) = scope {
        q.and_where(col(certificates::Column::OrganizationId).eq(org.0));
    }
    if let Some(status) = filter.status {
        q.and_where(col(certificates::Column::Status).eq(status.as_str()));
    }
    if let Some(ca) = filter.ca_id {
        q.and_where(col(certificates::Column::CaId).eq(ca.0));
    }
    if let Some(before) = filter.not_after_before {
        q.and_where(col(certificates::Column::NotAfter).lte(before));
    }
    if let Some(after) = filter.not_after_after {
        q.and_where(col(certificates::Column::NotAfter).gt(after));
    }
    if let Some(search) = search {
        matches(&mut q, via, search);
    }
    q
}

/// What a page's `total` counts: the matches, in the list's order when a
/// PostgreSQL search counts them, or the FTS5 index's own matches when
/// they are the same.
fn to_count(
    via: Via,
    scope: Option<OrganizationId>,
    filter: &CertificateFilter,
    search: Option<&Search>,
) -> SelectStatement {
    match search {
        Some(s) if via == Via::Fts && s.serial.is_none() && only_searched(scope, filter) => {
            index_matches(s)
        }
        _ => {
            let mut q = matching(via, scope, filter, search);
            // PostgreSQL counts a common substring fastest by walking a
            // list index until the limit; asked in the list's order its
            // planner weighs that walk against the trigram bitmap, where it
            // would otherwise take a limited sequential scan of the table.
            if via == Via::Plain && search.is_some() {
                order(&mut q, filter.order);
            }
            q
        }
    }
}

/// Nothing but the search (and the end-entity rule) narrows the list.
fn only_searched(scope: Option<OrganizationId>, filter: &CertificateFilter) -> bool {
    scope.is_none()
        && filter.status.is_none()
        && filter.ca_id.is_none()
        && filter.not_after_before.is_none()
        && filter.not_after_after.is_none()
}

/// The FTS5 index's own matches. It holds exactly the end-entity
/// certificates (its triggers add no CA), so with nothing else to filter
/// by these are the list's matches, counted without a lookup each (1,001
/// matches of a common substring: 2–6 ms, against 5–44 ms joined).
fn index_matches(search: &Search) -> SelectStatement {
    Query::select()
        .from(Alias::new(SEARCH_TABLE))
        .and_where(fts_match(search))
        .to_owned()
}

fn fts_match(search: &Search) -> Expr {
    Expr::cust_with_values(
        format!("{SEARCH_TABLE} MATCH ?"),
        [fts_phrase(search.subject)],
    )
}

/// The subject contains the search's text, ignoring case, or the serial
/// begins with it.
fn matches(q: &mut SelectStatement, via: Via, search: &Search) {
    let pattern = format!("%{}%", escape_like(search.subject));
    let subject = match via {
        // PostgreSQL: `ILIKE` on the subject, as `LIKE` on the subject
        // lowered once when stored (migration
        // m20261206_000005_folded_subject), which the trigram index and
        // the list indexes carry.
        Via::Plain => Expr::cust_with_values(
            "\"certificates\".\"subject_folded\" LIKE lower($1)",
            [pattern],
        ),
        // Joined, the matches stream: a count stops at its limit. A serial
        // is another way to match, which a join cannot say.
        Via::Fts if search.serial.is_none() => {
            q.inner_join(
                Alias::new(SEARCH_TABLE),
                Expr::col((Alias::new(SEARCH_TABLE), Alias::new("id")))
                    .equals((certificates::Entity, certificates::Column::Id)),
            )
            .and_where(fts_match(search));
            return;
        }
        Via::Fts => Expr::col((certificates::Entity, certificates::Column::Id)).in_subquery(
            Query::select()
                .column(Alias::new("id"))
                .from(Alias::new(SEARCH_TABLE))
                .and_where(fts_match(search))
                .to_owned(),
        ),
        // SQLite's LIKE ignores ASCII case (the trigram index any case);
        // backslash is PostgreSQL's default escape, SQLite has none.
        Via::Like => Expr::col((certificates::Entity, certificates::Column::Subject))
            .like(LikeExpr::new(pattern).escape('\\')),
    };
    q.and_where(match &search.serial {
        // Serials are lower-case hex: those beginning with `p` are the
        // range [p, p + "g"), which the index on `serial_hex` serves.
        Some(p) => subject.or(certificates::Column::SerialHex
            .gte(p.as_str())
            .and(certificates::Column::SerialHex.lt(format!("{p}g")))),
        None => subject,
    });
}

/// LIKE's wildcards and its escape character, taken literally.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One FTS5 phrase: inside double quotes every character is literal but
/// the quote itself, which is doubled.
fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn brief(r: Row) -> StoreResult<CertificateBrief> {
    Ok(CertificateBrief {
        id: CertificateId(r.id),
        serial_hex: r.serial_hex,
        subject: r.subject,
        sans: strings_from_json(&r.sans)?,
        not_before: r.not_before,
        not_after: r.not_after,
        status: parse_one(&r.status)?,
        ca_id: CaId(r.ca_id),
        profile_id: r.profile_id.map(ProfileId),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(escape_like(r"a_b%c\d"), r"a\_b\%c\\d");
        assert_eq!(escape_like("plain.example"), "plain.example");
    }

    #[test]
    fn a_search_looks_for_a_serial_only_when_it_is_hex() {
        let serial = |q| Search::new(q).serial;
        assert_eq!(serial("4A:1b:00").as_deref(), Some("4a1b00"));
        assert_eq!(serial("cafe").as_deref(), Some("cafe"));
        for q in ["team-07.", "4a 1b", ":", "0x4a", "é1"] {
            assert_eq!(serial(q), None, "{q}");
        }
        assert_eq!(Search::new("4A:1b").subject, "4A:1b");
    }

    /// The plans each way of matching is chosen for, whatever the data:
    /// SQLite plans from the schema alone (clm keeps no statistics).
    #[tokio::test]
    async fn each_way_of_searching_has_the_plan_it_is_chosen_for() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite_secure_for_plans(dir.path()).await;
        let plan = |via, scope, text: &str, order| {
            let filter = CertificateFilter {
                text: Some(text.to_string()),
                order,
                ..CertificateFilter::default()
            };
            let search = Search::new(text);
            let mut q = matching(via, scope, &filter, Some(&search));
            super::order(&mut q, order);
            q.column((certificates::Entity, certificates::Column::Id))
                .limit(50);
            let db = db.clone();
            async move { crate::store::sqlite_plan(&db.read, &q).await }
        };
        let newest = CertificateOrder::Newest;
        let org = Some(OrganizationId::new());

        // The matches stream out of the trigram index, each looked up once.
        let fts = plan(Via::Fts, None, "team-07.", newest).await;
        assert_eq!(
            fts[..2],
            [
                "SCAN certificate_search VIRTUAL TABLE INDEX 0:M2",
                "SEARCH certificates USING INDEX sqlite_autoindex_certificates_1 (id=?)",
            ],
            "{fts:?}"
        );
        // With nothing else to filter by, the count reads the index alone.
        let mut count = index_matches(&Search::new("team-07."));
        count.expr(Expr::val(1));
        assert_eq!(
            crate::store::sqlite_plan(&db.read, &count).await,
            ["SCAN certificate_search VIRTUAL TABLE INDEX 0:M2"]
        );
        // The walk reads the subject from the list index, in its order
        // (no sort step), with or without an organisation.
        assert_eq!(
            plan(Via::Like, None, "team-07.", newest).await,
            ["SEARCH certificates USING COVERING INDEX idx_certificates_list_subject (is_ca=?)"]
        );
        assert_eq!(
            plan(Via::Like, org, "team-07.", newest).await,
            [
                "SEARCH certificates USING COVERING INDEX idx_certificates_org_list_subject \
                 (organization_id=? AND is_ca=?)"
            ]
        );
    }

    #[test]
    fn many_matches_walk_the_list_unless_case_folding_would_differ() {
        let via = |counted, text| Via::for_page(counted, &Search::new(text));
        assert_eq!(via(1_000, "team-07."), Via::Fts);
        assert_eq!(via(1_001, "team-07."), Via::Like);
        assert_eq!(via(1_001, "ärzte"), Via::Fts);
        assert_eq!(
            Via::first(DatabaseBackend::Sqlite, Some(&Search::new("ab"))),
            Via::Like
        );
        assert_eq!(
            Via::first(DatabaseBackend::Postgres, Some(&Search::new("team"))),
            Via::Plain
        );
    }

    #[test]
    fn fts_phrases_quote_their_quotes() {
        assert_eq!(fts_phrase("team-07."), "\"team-07.\"");
        assert_eq!(fts_phrase(r#"O="x" AND y"#), r#""O=""x"" AND y""#);
    }
}
