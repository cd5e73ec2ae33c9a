% rebase('admin/base.tpl', title='Promotions', section='/admin/promos')
<h1>Promotions</h1>
<details class="card add-promo" id="new-code" {{'open' if error or not promos else ''}}>
  <summary><h2>New discount code</h2></summary>
  <form method="post" action="/admin/promos" class="form">
    % include('admin/_promo_form.tpl')
    <button type="submit">Add the code</button>
  </form>
</details>
<section class="card" aria-labelledby="promos-title">
  <div class="card-head">
    <h2 id="promos-title">Discount codes</h2>
    <span class="muted">{{len(promos)}} code{{"s" if len(promos) != 1 else ""}}</span>
  </div>
  % if promos:
  <table class="rows promos">
    <thead><tr><th>Code</th><th class="num">Off</th><th>Minimum basket</th><th>Dates (UTC)</th><th>For</th><th>Limits</th><th class="num">Uses</th><th>Status</th><th><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody>
    % for p in promos:
    % include('admin/_promo_row.tpl', p=p)
    % end
    </tbody>
  </table>
  % else:
  <p class="muted">No discount codes yet. Shoppers are asked for one at checkout only while a code can be used.</p>
  % end
</section>
