% rebase('admin/base.tpl', title='Data', section='/admin/data')
<h1>Exports and backups</h1>
<section class="cards">
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
