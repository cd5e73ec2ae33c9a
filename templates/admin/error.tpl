% rebase('admin/base.tpl', title='Sorry')
<h1>Sorry</h1>
<p>{{message}}</p>
