% rebase('admin/base.tpl', title='Data', section='/admin/data')
<h1>Exports and backups</h1>
<section class="cards">
  <div class="card">
    <h2>Replication off the box</h2>
    % if replication is None:
    <p>Not set up: the nightly backups below are on this box's disk only. Run the shop under Litestream to copy every change off the box within a second (README, "Running it for real").</p>
    % else:
    % problem = replication_problem(replication)
    <p><span class="state {{'off' if problem else 'on'}}">{{'stopped or behind' if problem else 'running'}}</span> Litestream says: {{replication['state']}}</p>
    % if replication.get('last_sync_at'):
    <p>Last copy {{replication['last_sync_at'][:19].replace('T', ' ')}} UTC, {{replication['behind_seconds']}} s ago.</p>
    % end
    % if problem:
    <p class="warn">{{problem}}. The owners are told when it stops and when it is back.</p>
    % end
    % end
  </div>
  <div class="card">
    <h2>Exports (CSV)</h2>
    <p><a class="button" href="/admin/export/orders.csv">Orders</a> <a class="button" href="/admin/export/payments.csv">Payments</a> <a class="button" href="/admin/export/ledger.csv">Balance ledger</a></p>
  </div>
  <div class="card">
    <h2>Backup</h2>
    <p>A consistent copy of the database, made while the shop runs. Keep the <code>media/</code> folder too.</p>
    <p><a class="button" href="/admin/backup">Download backup</a></p>
    <p class="muted">A backup is also written every night to <code>backups/</code> beside the database; the last 7 are kept.</p>
    % if backups:
    <ul>
    % for b in backups:
    <li>{{b.name}} ({{"%.1f" % (b.stat().st_size / 1048576)}} MB)</li>
    % end
    </ul>
    % end
  </div>
</section>
